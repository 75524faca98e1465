/*
 * Read-only BPMN diagram with case markers.
 *
 * Page contract (no inline script needed):
 *
 *   <div id="diagram"
 *        data-bpmn-url="/api/processes/<key>/bpmn?version=N"
 *        data-markers-json-id="case-markers"></div>
 *   <script type="application/json" id="case-markers">
 *     {"completed": ["start"], "active": ["register"], "waiting": [], "error": []}
 *   </script>
 *
 * Global: window.AftercareViewer
 *   .setMarkers(obj)  replace all case markers (same shape as the JSON block)
 *   .ready            Promise resolved once the diagram is shown
 *   .viewer           the bpmn-js NavigatedViewer instance (null until created)
 */

import NavigatedViewer from 'bpmn-js/lib/NavigatedViewer';

import { spiffworkflowDescriptorFor } from './spiffworkflow-moddle.js';

import { keepUnresolvedReferences } from './references.js';

export const MARKER_KINDS = [ 'completed', 'active', 'waiting', 'error' ];

const MARKER_PREFIX = 'case-';

function readJsonBlock(id) {
  if (!id) {
    return null;
  }

  const el = document.getElementById(id);

  if (!el) {
    return null;
  }

  const text = (el.textContent || '').trim();

  if (!text) {
    return null;
  }

  try {
    return JSON.parse(text);
  } catch (err) {
    console.error('AftercareViewer: invalid JSON in #' + id, err);
    return null;
  }
}

function normalizeMarkers(obj) {
  const result = {};

  for (const kind of MARKER_KINDS) {
    const ids = obj && Array.isArray(obj[kind]) ? obj[kind] : [];
    result[kind] = ids.filter(id => typeof id === 'string' && id);
  }

  return result;
}

function showMessage(container, text) {
  let box = container.querySelector('.diagram-message');

  if (!box) {
    box = document.createElement('div');
    box.className = 'diagram-message';
    box.setAttribute('role', 'alert');
    container.appendChild(box);
  }

  box.textContent = text;
}

async function fetchXml(url) {
  const response = await fetch(url, {
    credentials: 'same-origin',
    headers: { Accept: 'application/xml, text/xml, */*' }
  });

  if (!response.ok) {
    throw new Error('HTTP ' + response.status + ' ' + response.statusText);
  }

  return response.text();
}

function createApi() {
  let viewer = null;
  let current = normalizeMarkers(null);
  let applied = [];
  let resolveReady;
  let rejectReady;

  const ready = new Promise((resolve, reject) => {
    resolveReady = resolve;
    rejectReady = reject;
  });

  // avoid unhandled rejection noise when nobody waits for it
  ready.catch(() => {});

  function apply() {
    if (!viewer) {
      return;
    }

    const canvas = viewer.get('canvas');
    const elementRegistry = viewer.get('elementRegistry');

    for (const [ id, cls ] of applied) {
      if (elementRegistry.get(id)) {
        canvas.removeMarker(id, cls);
      }
    }

    applied = [];

    for (const kind of MARKER_KINDS) {
      const cls = MARKER_PREFIX + kind;

      for (const id of current[kind]) {
        if (elementRegistry.get(id)) {
          canvas.addMarker(id, cls);
          applied.push([ id, cls ]);
        }
      }
    }
  }

  return {
    ready,

    get viewer() {
      return viewer;
    },

    /**
     * Replace all case markers.
     *
     * @param {{completed?: string[], active?: string[], waiting?: string[], error?: string[]}} obj
     */
    setMarkers(obj) {
      current = normalizeMarkers(obj);
      apply();
    },

    /** Current markers, as last set. */
    getMarkers() {
      return normalizeMarkers(current);
    },

    _attach(instance) {
      viewer = instance;
      apply();
    },

    _resolve(value) {
      resolveReady(value);
    },

    _reject(err) {
      rejectReady(err);
    }
  };
}

async function init(api) {
  const container = document.getElementById('diagram');

  if (!container) {
    api._reject(new Error('no #diagram element'));
    return;
  }

  container.classList.add('aftercare-diagram');

  const markers = readJsonBlock(container.dataset.markersJsonId || 'case-markers');

  if (markers) {
    api.setMarkers(markers);
  }

  const url = container.dataset.bpmnUrl;

  if (!url) {
    showMessage(container, '没有流程图 No diagram URL (data-bpmn-url).');
    api._reject(new Error('missing data-bpmn-url'));
    return;
  }

  try {
    container.setAttribute('aria-busy', 'true');

    const xml = await fetchXml(url);

    const viewer = new NavigatedViewer({
      container,
      moddleExtensions: {
        spiffworkflow: spiffworkflowDescriptorFor(xml)
      }
    });

    const { warnings } = await viewer.importXML(xml);

    // references to process variables and unknown attributes are expected
    const serious = keepUnresolvedReferences(viewer.get('moddle'), warnings)
      .filter(w => !/^unknown attribute </.test(w.message));

    if (serious.length) {
      console.warn('AftercareViewer: import warnings', serious);
    }

    const canvas = viewer.get('canvas');

    canvas.zoom('fit-viewport', 'auto');

    window.addEventListener('resize', () => canvas.resized());

    api._attach(viewer);
    container.setAttribute('data-loaded', 'true');
    api._resolve(viewer);
  } catch (err) {
    console.error('AftercareViewer: cannot show diagram', err);
    showMessage(container, '无法显示流程图 Cannot show diagram: ' + (err && err.message || err));
    container.setAttribute('data-load-error', 'true');
    api._reject(err);
  } finally {
    container.removeAttribute('aria-busy');
  }
}

const api = createApi();

window.AftercareViewer = api;

if (document.readyState === 'loading') {
  document.addEventListener('DOMContentLoaded', () => init(api));
} else {
  init(api);
}
