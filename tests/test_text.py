"""Text sources, the held-out split and packing (gemmascope.data.text)."""

import gzip
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from gemmascope.data import text

BOS, EOS, PAD = 1, 2, 3


class CharTokenizer:
    """ids = ord(c) + 10, so a packed stream can be decoded and checked exactly."""

    def __call__(self, texts, add_special_tokens=False):
        assert not add_special_tokens
        return {"input_ids": [[ord(c) + 10 for c in t] for t in texts]}


@pytest.fixture(scope="module")
def docs():
    return text.embedded_corpus()


@pytest.fixture(scope="module")
def smollm_tokenizer():
    from gemmascope.lm import loading

    return loading.load_tokenizer(loading.embedded_gguf_path())


def test_embedded_corpus_documents(docs):
    assert len(docs) == 13_423  # the README's count
    assert all(d.strip() and "\n%\n" not in d for d in docs)
    assert sum(len(d) for d in docs) > 2_000_000


def test_embedded_corpus_has_enough_tokens(docs, smollm_tokenizer):
    n = text.count_tokens(smollm_tokenizer, docs)
    print(f"\nembedded corpus: {len(docs)} documents, {n} SmolLM2 tokens (+{len(docs)} EOS when packed)")
    assert n >= 300_000


def test_pack_layout_and_mask():
    texts = ["hello world", "a", "", "the quick brown fox jumps over the lazy dog", "xyz"]
    T = 8
    tokens, mask = text.pack(CharTokenizer(), texts, T, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    assert tokens.dtype == np.int32 and mask.dtype == bool and tokens.shape == mask.shape
    assert tokens.shape[1] == T and (tokens[:, 0] == BOS).all()
    # The rows' bodies are exactly the EOS-joined stream (empty documents skipped), then padding.
    stream = []
    for t in texts:
        if t:
            stream += [ord(c) + 10 for c in t] + [EOS]
    body = tokens[:, 1:].reshape(-1)
    n = len(stream)
    assert body[:n].tolist() == stream and (body[n:] == PAD).all()
    assert len(tokens) == -(-n // (T - 1))
    # Mask: False exactly at BOS, EOS, padding.
    assert (mask == ~np.isin(tokens, [BOS, EOS, PAD])).all()
    assert mask.sum() == sum(len(t) for t in texts)
    # drop_last drops the padded row; max_sequences truncates.
    t2, _ = text.pack(CharTokenizer(), texts, T, bos_id=BOS, eos_id=EOS, pad_id=PAD, drop_last=True)
    assert len(t2) == n // (T - 1) and (t2 != PAD).all()
    t3, m3 = text.pack(CharTokenizer(), texts, T, bos_id=BOS, eos_id=EOS, pad_id=PAD, max_sequences=2)
    assert t3.shape == (2, T) and (t3 == tokens[:2]).all()


def test_pack_masks_padding_even_when_pad_is_eos():
    tokens, mask = text.pack(CharTokenizer(), ["abc"], 10, bos_id=BOS, eos_id=EOS)  # pad defaults to EOS
    assert tokens[0].tolist() == [BOS, 107, 108, 109, EOS, EOS, EOS, EOS, EOS, EOS]
    assert mask[0].tolist() == [False, True, True, True] + [False] * 6


def test_iter_packed_batches_stream():
    texts = [f"document number {i}" for i in range(50)]
    batches = list(text.iter_packed(CharTokenizer(), texts, 16, bos_id=BOS, eos_id=EOS, pad_id=PAD, batch_size=8))
    assert all(b[0].shape[0] == 8 for b in batches[:-1]) and 1 <= batches[-1][0].shape[0] <= 8
    whole, _ = text.pack(CharTokenizer(), texts, 16, bos_id=BOS, eos_id=EOS, pad_id=PAD)
    assert (np.concatenate([b[0] for b in batches]) == whole).all()


def test_pack_real_tokenizer(smollm_tokenizer):
    tok = smollm_tokenizer
    tokens, mask = text.pack(tok, ["Hello world.", "Second document here."], 6, bos_id=0, eos_id=0)
    assert (tokens[:, 0] == 0).all() and not mask[tokens == 0].any()
    ids = tok(["Hello world.", "Second document here."], add_special_tokens=False)["input_ids"]
    assert mask.sum() == sum(len(i) for i in ids)


def test_heldout_split_is_disjoint_deterministic_and_sized(docs):
    train, held = text.split_texts(docs, 0.05)
    assert len(train) + len(held) == len(docs)
    assert not set(train) & set(held)
    assert 0.04 < len(held) / len(docs) < 0.06
    assert text.split_texts(docs, 0.05) == (train, held)  # deterministic
    assert text.split_texts(docs, 0.05, salt="other")[1] != held
    assert list(text.iter_texts({"kind": "embedded", "split_part": "heldout"})) == held
    assert list(text.iter_texts({"kind": "embedded", "split_part": "train", "limit": 3})) == train[:3]
    # Stable across processes and versions: a fixed document's hash is a constant.
    assert text.doc_hash_unit("hello") == text.doc_hash_unit("hello")
    assert abs(text.doc_hash_unit("hello") - 0.23969443825887027) < 1e-12


def test_local_files(tmp_path):
    (tmp_path / "a.txt").write_text("one\n%\ntwo lines\nhere\n%\n\n%\nthree\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        for t in ["j1", "", "j2"]:
            f.write(json.dumps({"text": t, "id": 0}) + "\n")
    assert list(text.iter_file_texts(str(tmp_path / "a.txt"), doc_separator="%")) == ["one", "two lines\nhere", "three"]
    assert list(text.iter_file_texts(str(tmp_path / "a.txt"))) == [(tmp_path / "a.txt").read_text()]
    assert list(text.iter_file_texts(str(tmp_path / "b.jsonl.gz"))) == ["j1", "j2"]
    with pytest.raises(KeyError, match="body"):
        list(text.iter_file_texts(str(tmp_path / "b.jsonl.gz"), text_column="body"))
    src = {"kind": "files", "paths": [str(tmp_path / "*.txt"), str(tmp_path / "b.jsonl.gz")], "doc_separator": "%"}
    assert list(text.iter_texts(src)) == ["one", "two lines\nhere", "three", "j1", "j2"]
    with pytest.raises(FileNotFoundError, match="nothing"):
        list(text.iter_texts({"kind": "files", "paths": str(tmp_path / "nothing*.txt")}))


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"content": ["p1", None, "p2", "p3"], "n": [1, 2, 3, 4]}), tmp_path / "c.parquet", row_group_size=2
    )
    assert list(text.iter_file_texts(str(tmp_path / "c.parquet"), text_column="content")) == ["p1", "p2", "p3"]
    with pytest.raises(KeyError, match="text"):
        list(text.iter_file_texts(str(tmp_path / "c.parquet")))


def test_hf_source_needs_a_name_and_datasets():
    with pytest.raises(ValueError, match="name"):
        list(text.iter_texts({"kind": "hf"}))
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install datasets"):
            list(text.iter_texts({"kind": "hf", "name": "some/dataset"}))
    with pytest.raises(ValueError, match="kind"):
        list(text.iter_texts({"kind": "web"}))
