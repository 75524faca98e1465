// Form editor: re-render the preview on the server (the same renderer as task pages) while typing.
(function () {
  'use strict';

  var textarea = document.getElementById('schema');
  if (!textarea) {
    return;
  }
  var target = document.getElementById(textarea.getAttribute('data-preview-target'));
  var url = textarea.getAttribute('data-preview-url');
  var meta = document.querySelector('meta[name="csrf-token"]');
  var token = meta ? meta.getAttribute('content') : '';
  var timer = null;
  var sent = 0;

  function refresh() {
    var mine = ++sent;
    var body = new URLSearchParams();
    body.set('schema', textarea.value);
    fetch(url, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'X-CSRF-Token': token, 'Content-Type': 'application/x-www-form-urlencoded' },
      body: body.toString()
    }).then(function (response) {
      return response.text();
    }).then(function (html) {
      if (mine === sent) {
        target.innerHTML = html;
        target.setAttribute('data-updated', String(mine));
      }
    }).catch(function () { /* keep the last preview */ });
  }

  textarea.addEventListener('input', function () {
    window.clearTimeout(timer);
    timer = window.setTimeout(refresh, 300);
  });
})();
