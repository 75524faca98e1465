// Task forms: add and remove rows of array fields (tables of objects).
// A row template holds "__index__" in its input names; new rows get the next free index.
(function () {
  'use strict';

  function renumber(html, index) {
    return html.split('__index__').join(String(index));
  }

  document.addEventListener('click', function (event) {
    var add = event.target.closest('[data-add-row]');
    if (add) {
      event.preventDefault();
      var id = add.getAttribute('data-add-row');
      var fieldset = document.getElementById(id);
      var template = document.getElementById(id + '-template');
      if (!fieldset || !template) {
        return;
      }
      var index = parseInt(fieldset.getAttribute('data-next-index') || '0', 10);
      fieldset.setAttribute('data-next-index', String(index + 1));
      var holder = document.createElement('tbody');
      holder.innerHTML = renumber(template.innerHTML, index);
      var row = holder.firstElementChild;
      fieldset.querySelector('tbody').appendChild(row);
      var first = row.querySelector('input, select, textarea');
      if (first) {
        first.focus();
      }
      return;
    }
    var remove = event.target.closest('[data-remove-row]');
    if (remove) {
      event.preventDefault();
      var tr = remove.closest('tr');
      if (tr) {
        tr.parentNode.removeChild(tr);
      }
    }
  });
})();
