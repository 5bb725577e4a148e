// Index behaviour (inlined into index.html by gemmascope.analysis.dashboard_render): search (substring
// over each row's data-search, lower-cased, spaces kept so " the" finds the leading-space token), class
// filter, sort on header click (numbers by data-v, otherwise text). Plain DOM JS, no libraries.
(function(){
  var rows = Array.prototype.slice.call(document.querySelectorAll('#latents tbody tr'));
  var box = document.getElementById('search'), cls = document.getElementById('cls');
  var count = document.getElementById('count');
  function apply(){
    var q = box.value.toLowerCase(), c = cls.value, n = 0;
    rows.forEach(function(r){
      var ok = (!q || r.getAttribute('data-search').indexOf(q) >= 0) &&
               (!c || r.getAttribute('data-class') === c);
      r.style.display = ok ? '' : 'none';
      if (ok) n++;
    });
    count.textContent = n + ' of ' + rows.length + ' latents';
  }
  box.addEventListener('input', apply);
  cls.addEventListener('change', apply);
  document.querySelectorAll('#latents th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var dir = th.getAttribute('data-dir') === 'desc' ? 'asc' : 'desc';
      document.querySelectorAll('#latents th').forEach(function(o){ o.removeAttribute('data-dir'); });
      th.setAttribute('data-dir', dir);
      var num = th.hasAttribute('data-num'), s = dir === 'asc' ? 1 : -1;
      rows.sort(function(a, b){
        var x = a.children[col], y = b.children[col];
        if (num) return s * (parseFloat(x.getAttribute('data-v')) - parseFloat(y.getAttribute('data-v')));
        return s * x.textContent.localeCompare(y.textContent);
      });
      var body = document.querySelector('#latents tbody');
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
  apply();
})();
