"""Exported SAE files: what leaves training and what people load, apart from the training
architectures in :mod:`gemmascope.sae`.

- :mod:`gemmascope.sae.files.model`: one forward (encode, decode, transcode) for every exported
  SAE, whatever its architecture, in raw activation units.
- :mod:`gemmascope.sae.files.io`: the entry point: ``params.npz`` + ``metadata.json`` in and out,
  any SAE folder loaded (:func:`~gemmascope.sae.files.io.load_params`).
- :mod:`gemmascope.sae.files.layouts`: the array layouts, their validation and the normalisation
  folding (the lowest layer: ``io`` and ``formats`` both import it).
- :mod:`gemmascope.sae.files.formats`: other libraries' folders, SAELens and Gemma Scope 2.
- :mod:`gemmascope.sae.files.export`: writing a folder in another layout (``launch/export.py``
  and the end-of-training hook).
- :mod:`gemmascope.sae.files.multilayer`: cross-layer transcoder folders (Gemma Scope 2's per-layer files).
- :mod:`gemmascope.sae.files.release`: a whole workdir as Gemma Scope 2's release tree;
  :mod:`gemmascope.sae.files.mirror`: release names in a local mirror of such trees
  (``gemmascope.load_sae(name, root=...)``).
"""
