// Small behaviours shared by every staff page (no inline scripts: the CSP forbids them).
(function () {
  'use strict';

  // Filter bars submit as soon as a select changes.
  document.querySelectorAll('form[data-autosubmit] select').forEach(function (select) {
    select.addEventListener('change', function () { select.form.requestSubmit ? select.form.requestSubmit() : select.form.submit(); });
  });

  // Buttons that need a second thought.
  document.addEventListener('click', function (event) {
    var button = event.target.closest('[data-confirm]');
    if (button && !window.confirm(button.getAttribute('data-confirm'))) {
      event.preventDefault();
    }
  });

  // After a failed submission, take the reader to the list of problems.
  var summary = document.getElementById('error-summary');
  if (summary) {
    summary.focus();
  }

  // Avoid double submissions of the same form.
  document.addEventListener('submit', function (event) {
    var form = event.target;
    if (form.dataset.submitting) {
      event.preventDefault();
      return;
    }
    form.dataset.submitting = '1';
    window.setTimeout(function () { delete form.dataset.submitting; }, 3000);
  });
})();
