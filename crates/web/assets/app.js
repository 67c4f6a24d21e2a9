// Chronicle's web UI: the little interactivity the server-rendered pages need. Everything works
// without it (forms submit, links navigate); with it, the contact search updates as you type and
// the time-travel slider redraws the 360 when it is let go.
(function () {
  'use strict';

  // The contact list's search box: the table's rows follow what is typed.
  var live = document.querySelector('input[data-live="rows"]');
  if (live) {
    var form = live.form, rows = document.getElementById('rows'), timer = null, seq = 0;
    live.addEventListener('input', function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        var params = new URLSearchParams(new FormData(form));
        var mine = ++seq;
        history.replaceState(null, '', form.action + '?' + params.toString());
        params.set('part', 'rows');
        fetch(form.action + '?' + params.toString(), { credentials: 'same-origin' })
          .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
          .then(function (html) { if (mine === seq) { rows.innerHTML = html; rows.setAttribute('data-query', live.value); } })
          .catch(function () { /* the Filter button still works */ });
      }, 150);
    });
  }

  // The time-travel slider: shows the instant while it moves, loads the 360 as of it when let go.
  var slider = document.querySelector('input[data-as-of]');
  if (slider) {
    var out = document.getElementById('as-of-shown');
    var iso = function () { return new Date(Number(slider.value) * 1000).toISOString().replace('.000Z', 'Z'); };
    slider.addEventListener('input', function () { out.textContent = iso(); });
    slider.addEventListener('change', function () {
      var at = Number(slider.value) >= Number(slider.max) ? '' : '?as_of=' + encodeURIComponent(iso());
      location.assign(slider.getAttribute('data-as-of') + at);
    });
  }
})();

// The live activity view: the tenant's events as they are committed (server-sent events; the
// browser reconnects by itself and resumes after the last event it saw).
(function () {
  'use strict';
  var list = document.getElementById('live');
  if (!list || !window.EventSource) { return; }
  var state = document.getElementById('live-state');
  var source = new EventSource(list.getAttribute('data-source'));
  source.onopen = function () { state.textContent = 'Following the log; new events appear at the top.'; };
  source.onerror = function () { state.textContent = 'Reconnecting…'; };
  source.onmessage = function (m) {
    var e = JSON.parse(m.data);
    var li = document.createElement('li');
    li.setAttribute('data-type', e.type);
    var text = e.at + ' · ' + e.type + ' on ' + e.stream + (e.actor ? ' by ' + e.actor : '');
    if (e.customer) {
      var a = document.createElement('a');
      a.href = '/ui/customers/' + encodeURIComponent(e.customer);
      a.textContent = text;
      li.appendChild(a);
    } else {
      li.textContent = text;
    }
    list.insertBefore(li, list.firstChild);
    while (list.children.length > 200) { list.removeChild(list.lastChild); }
  };
})();
