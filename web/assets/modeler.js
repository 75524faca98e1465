/*
 * BPMN editor for process owners: bpmn-js Modeler, a small properties panel
 * for the SpiffWorkflow extensions Aftercare uses, and deployment.
 *
 * Page contract (no inline script needed):
 *
 *   <div id="modeler"
 *        data-bpmn-url="/api/processes/<key>/bpmn?version=N"   (omit for a new, blank diagram)
 *        data-deploy-url="/api/processes"
 *        data-csrf-token="..."
 *        data-filename="complaint.bpmn"></div>
 *
 * The script builds, inside #modeler (unless the page already has elements
 * with these ids): a toolbar with button#deploy and div#deploy-result, the
 * canvas, and aside#properties-panel whose inputs are #prop-name,
 * #prop-form, #prop-sla, #prop-operator, #prop-result-variable,
 * #prop-decision and #prop-condition.
 *
 * Global: window.AftercareModeler
 *   .ready      Promise resolved with the Modeler once the diagram is open
 *   .modeler    the bpmn-js Modeler instance (null until created)
 *   .deploy()   same as clicking the deploy button; resolves with the outcome
 *   .getXML()   Promise of the current XML (formatted)
 */

import Modeler from 'bpmn-js/lib/Modeler';

import { getBusinessObject, is } from 'bpmn-js/lib/util/ModelUtil';

import { spiffworkflowDescriptorFor, spiffworkflowDescriptor } from './spiffworkflow-moddle.js';

import { keepUnresolvedReferences } from './references.js';

const DEPLOY_ERROR_MARKER = 'deploy-error';

const BATCH_COMMAND = 'aftercare.batchUpdate';

// ---------------------------------------------------------------- DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);

  for (const [ key, value ] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) {
      continue;
    }

    if (key === 'className') {
      el.className = value;
    } else if (key === 'text') {
      el.textContent = value;
    } else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }

  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) {
      continue;
    }

    el.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
  }

  return el;
}

function ensureElement(id, create) {
  const existing = document.getElementById(id);

  if (existing) {
    return { el: existing, created: false };
  }

  const el = create();
  el.id = id;

  return { el, created: true };
}

// ------------------------------------------------------ extension accessors

function extensionValues(bo) {
  const ext = bo && bo.get('extensionElements');

  return ext ? ext.get('values') : [];
}

function findExtension(bo, type) {
  return extensionValues(bo).find(v => v.$instanceOf && v.$instanceOf(type));
}

function getSpiffProperty(bo, name) {
  const props = findExtension(bo, 'spiffworkflow:Properties');

  if (!props) {
    return '';
  }

  const prop = props.get('properties').find(p => p.get('name') === name);

  return prop ? (prop.get('value') || '') : '';
}

function getOperator(bo) {
  return findExtension(bo, 'spiffworkflow:ServiceTaskOperator');
}

function getCalledDecision(bo) {
  return findExtension(bo, 'spiffworkflow:CalledDecisionId');
}

function getCondition(bo) {
  const expr = bo.get('conditionExpression');

  return expr ? (expr.get('body') || '') : '';
}

function describeType(element) {
  const bo = getBusinessObject(element);
  const type = (bo && bo.$type || element.type || '').replace(/^bpmn:/, '');

  const labels = {
    UserTask: '用户任务 User task',
    ServiceTask: '服务任务 Service task',
    BusinessRuleTask: '业务规则任务 Business rule task',
    ScriptTask: '脚本任务 Script task',
    Task: '任务 Task',
    StartEvent: '开始事件 Start event',
    EndEvent: '结束事件 End event',
    IntermediateCatchEvent: '中间捕获事件 Intermediate catch event',
    IntermediateThrowEvent: '中间抛出事件 Intermediate throw event',
    BoundaryEvent: '边界事件 Boundary event',
    ExclusiveGateway: '排他网关 Exclusive gateway',
    ParallelGateway: '并行网关 Parallel gateway',
    InclusiveGateway: '包容网关 Inclusive gateway',
    EventBasedGateway: '事件网关 Event-based gateway',
    SequenceFlow: '顺序流 Sequence flow',
    Lane: '泳道 Lane',
    Participant: '池 Pool',
    Process: '流程 Process',
    Collaboration: '协作 Collaboration',
    SubProcess: '子流程 Sub-process',
    CallActivity: '调用活动 Call activity'
  };

  return labels[type] || type;
}

// ------------------------------------------------------------ the editor

function createEditor(container) {
  const deployUrl = container.dataset.deployUrl || '/api/processes';
  const csrfToken = container.dataset.csrfToken || '';
  const filename = container.dataset.filename || 'diagram.bpmn';
  const bpmnUrl = container.dataset.bpmnUrl || '';

  container.classList.add('aftercare-modeler');

  // layout ------------------------------------------------------------------

  const deployButton = ensureElement('deploy', () => h('button', {
    type: 'button',
    className: 'am-button am-deploy',
    text: '部署 Deploy'
  }));

  const downloadButton = h('button', {
    type: 'button',
    id: 'download-bpmn',
    className: 'am-button',
    text: '下载 Download XML'
  });

  const result = ensureElement('deploy-result', () => h('div', {
    className: 'am-deploy-result',
    role: 'status',
    'aria-live': 'polite'
  }));

  const canvasEl = h('div', { className: 'am-canvas' });

  const panel = ensureElement('properties-panel', () => h('aside', {
    className: 'am-panel',
    'aria-label': '属性 Properties'
  }));

  const toolbarChildren = [];

  if (deployButton.created) {
    toolbarChildren.push(deployButton.el);
  }

  toolbarChildren.push(downloadButton);

  if (result.created) {
    toolbarChildren.push(result.el);
  }

  container.appendChild(h('div', { className: 'am-toolbar' }, toolbarChildren));

  const body = h('div', { className: 'am-body' }, canvasEl);

  if (panel.created) {
    body.appendChild(panel.el);
  }

  container.appendChild(body);

  panel.el.classList.add('am-panel');

  let modeler = null;
  let current = null; // element shown in the panel
  let fields = {}; // id -> { input, get }
  let errorMarked = [];

  // model updates -----------------------------------------------------------

  function service(name) {
    return modeler.get(name);
  }

  /** Run several modeling operations as one undoable command. */
  function batch(fn) {
    service('commandStack').execute(BATCH_COMMAND, { run: fn });
  }

  function ensureExtensionElements(element) {
    const bo = getBusinessObject(element);
    let ext = bo.get('extensionElements');

    if (!ext) {
      ext = service('bpmnFactory').create('bpmn:ExtensionElements', { values: [] });
      ext.$parent = bo;
      service('modeling').updateProperties(element, { extensionElements: ext });
    }

    return ext;
  }

  function addExtension(element, type, attrs) {
    const ext = ensureExtensionElements(element);
    const value = service('bpmnFactory').create(type, attrs || {});

    value.$parent = ext;
    service('modeling').updateModdleProperties(element, ext, {
      values: [ ...ext.get('values'), value ]
    });

    return value;
  }

  function removeExtension(element, value) {
    const bo = getBusinessObject(element);
    const ext = bo.get('extensionElements');

    if (!ext) {
      return;
    }

    const rest = ext.get('values').filter(v => v !== value);

    if (rest.length) {
      service('modeling').updateModdleProperties(element, ext, { values: rest });
    } else {
      service('modeling').updateProperties(element, { extensionElements: undefined });
    }
  }

  function setSpiffProperty(element, name, value) {
    batch(() => {
      const bo = getBusinessObject(element);
      const modeling = service('modeling');
      let props = findExtension(bo, 'spiffworkflow:Properties');
      const prop = props && props.get('properties').find(p => p.get('name') === name);

      if (value) {
        if (prop) {
          modeling.updateModdleProperties(element, prop, { value });
          return;
        }

        if (!props) {
          props = addExtension(element, 'spiffworkflow:Properties', { properties: [] });
        }

        const created = service('bpmnFactory').create('spiffworkflow:Property', { name, value });
        created.$parent = props;
        modeling.updateModdleProperties(element, props, {
          properties: [ ...props.get('properties'), created ]
        });

        return;
      }

      if (!prop) {
        return;
      }

      const rest = props.get('properties').filter(p => p !== prop);

      if (rest.length) {
        modeling.updateModdleProperties(element, props, { properties: rest });
      } else {
        removeExtension(element, props);
      }
    });
  }

  function setOperatorAttr(element, attr, value) {
    batch(() => {
      const bo = getBusinessObject(element);
      const modeling = service('modeling');
      const operator = getOperator(bo);

      if (operator) {
        modeling.updateModdleProperties(element, operator, { [attr]: value || undefined });

        const empty = !operator.get('id') && !operator.get('resultVariable') &&
          !operator.get('parameterList') && !Object.keys(operator.$attrs || {}).length;

        if (empty) {
          removeExtension(element, operator);
        }
      } else if (value) {
        addExtension(element, 'spiffworkflow:ServiceTaskOperator', { [attr]: value });
      }
    });
  }

  function setCalledDecision(element, value) {
    batch(() => {
      const bo = getBusinessObject(element);
      const decision = getCalledDecision(bo);

      if (decision && value) {
        service('modeling').updateModdleProperties(element, decision, { value });
      } else if (decision) {
        removeExtension(element, decision);
      } else if (value) {
        addExtension(element, 'spiffworkflow:CalledDecisionId', { value });
      }
    });
  }

  function setCondition(element, value) {
    const bo = getBusinessObject(element);
    const modeling = service('modeling');
    const expr = bo.get('conditionExpression');

    if (!value.trim()) {
      if (expr) {
        modeling.updateProperties(element, { conditionExpression: undefined });
      }

      return;
    }

    if (expr) {
      modeling.updateModdleProperties(element, expr, { body: value });
    } else {
      const created = service('bpmnFactory').create('bpmn:FormalExpression', { body: value });
      modeling.updateProperties(element, { conditionExpression: created });
    }
  }

  function setName(element, value) {
    const modeling = service('modeling');

    if (element === service('canvas').getRootElement()) {
      modeling.updateProperties(element, { name: value || undefined });
    } else {
      modeling.updateLabel(element, value);
    }
  }

  // panel -------------------------------------------------------------------

  function field(id, label, value, onInput, options = {}) {
    const input = options.multiline
      ? h('textarea', { id, rows: 3, spellcheck: 'false' })
      : h('input', { id, type: 'text', spellcheck: 'false', placeholder: options.placeholder });

    input.value = value;
    input.addEventListener('input', () => onInput(input.value));

    fields[id] = { input, get: options.get };

    return h('div', { className: 'am-field' },
      h('label', { for: id, text: label }),
      input,
      options.hint ? h('p', { className: 'am-hint', text: options.hint }) : null
    );
  }

  function renderPanel(element) {
    current = element;
    fields = {};

    const el = panel.el;
    el.textContent = '';

    if (!element) {
      el.appendChild(h('p', { className: 'am-empty', text: '选择一个元素 Select an element to edit it.' }));
      return;
    }

    if (Array.isArray(element)) {
      el.appendChild(h('p', {
        className: 'am-empty',
        text: '已选择 ' + element.length + ' 个元素 ' + element.length + ' elements selected.'
      }));
      current = null;
      return;
    }

    const bo = getBusinessObject(element);
    const isRoot = element === service('canvas').getRootElement();

    el.appendChild(h('h2', { className: 'am-title', text: describeType(element) }));
    el.appendChild(h('p', { className: 'am-id' },
      'ID ',
      h('code', { id: 'prop-id', text: bo.get('id') || element.id })
    ));

    const nameGet = () => (is(element, 'bpmn:TextAnnotation') ? bo.get('text') : bo.get('name')) || '';

    if (isRoot && !is(element, 'bpmn:Process')) {
      el.appendChild(h('p', { className: 'am-empty', text: '选择一个元素 Select an element to edit it.' }));
      return;
    }

    if (is(element, 'bpmn:Lane')) {
      el.appendChild(field('prop-name', '员工组 Staff group (lane name)', nameGet(),
        v => setName(element, v), { get: nameGet, hint: '用户任务由此组处理 User tasks in this lane go to this group.' }));
    } else if (!is(element, 'bpmn:Group') && !is(element, 'bpmn:Association')) {
      el.appendChild(field('prop-name', is(element, 'bpmn:TextAnnotation') ? '文本 Text' : '名称 Name',
        nameGet(), v => setName(element, v), { get: nameGet }));
    }

    if (is(element, 'bpmn:UserTask')) {
      const formGet = () => getSpiffProperty(getBusinessObject(element), 'formJsonSchemaFilename');
      const slaGet = () => getSpiffProperty(getBusinessObject(element), 'slaPolicy');

      el.appendChild(field('prop-form', '表单 Form (formJsonSchemaFilename)', formGet(),
        v => setSpiffProperty(element, 'formJsonSchemaFilename', v.trim()),
        { get: formGet, placeholder: 'complaint-register.json' }));

      el.appendChild(field('prop-sla', 'SLA 策略 SLA policy (slaPolicy)', slaGet(),
        v => setSpiffProperty(element, 'slaPolicy', v.trim()),
        { get: slaGet, placeholder: 'complaint_register' }));
    }

    if (is(element, 'bpmn:ServiceTask')) {
      const opGet = () => {
        const op = getOperator(getBusinessObject(element));
        return op ? (op.get('id') || '') : '';
      };
      const resultGet = () => {
        const op = getOperator(getBusinessObject(element));
        return op ? (op.get('resultVariable') || '') : '';
      };

      el.appendChild(field('prop-operator', '服务操作 Operator (serviceTaskOperator id)', opGet(),
        v => setOperatorAttr(element, 'id', v.trim()), { get: opGet }));

      el.appendChild(field('prop-result-variable', '结果变量 Result variable', resultGet(),
        v => setOperatorAttr(element, 'resultVariable', v.trim()), { get: resultGet }));
    }

    if (is(element, 'bpmn:BusinessRuleTask')) {
      const decisionGet = () => {
        const d = getCalledDecision(getBusinessObject(element));
        return d ? (d.get('value') || '') : '';
      };

      el.appendChild(field('prop-decision', '决策表 Decision (calledDecisionId)', decisionGet(),
        v => setCalledDecision(element, v.trim()), { get: decisionGet }));
    }

    if (is(element, 'bpmn:SequenceFlow')) {
      const condGet = () => getCondition(getBusinessObject(element));

      el.appendChild(field('prop-condition', '条件 Condition expression', condGet(),
        v => setCondition(element, v), {
          get: condGet,
          multiline: true,
          hint: '留空表示无条件 Empty means unconditional.'
        }));
    }
  }

  /** Refresh field values after model changes (undo, canvas edits). */
  function syncPanel() {
    if (!current) {
      return;
    }

    if (!service('elementRegistry').get(current.id)) {
      renderPanel(null);
      return;
    }

    for (const { input, get } of Object.values(fields)) {
      if (get && document.activeElement !== input) {
        const value = get();

        if (input.value !== value) {
          input.value = value;
        }
      }
    }

    const idEl = panel.el.querySelector('#prop-id');

    if (idEl) {
      idEl.textContent = getBusinessObject(current).get('id') || current.id;
    }
  }

  function selectionToPanel(selection) {
    if (!selection || !selection.length) {
      const root = service('canvas').getRootElement();
      renderPanel(is(root, 'bpmn:Process') ? root : null);
    } else if (selection.length === 1) {
      renderPanel(selection[0]);
    } else {
      renderPanel(selection);
    }
  }

  // deploy ------------------------------------------------------------------

  function clearErrorMarkers() {
    const canvas = service('canvas');
    const registry = service('elementRegistry');

    for (const id of errorMarked) {
      if (registry.get(id)) {
        canvas.removeMarker(id, DEPLOY_ERROR_MARKER);
      }
    }

    errorMarked = [];
  }

  function markErrorElement(id) {
    const element = id && service('elementRegistry').get(id);

    if (!element) {
      return null;
    }

    service('canvas').addMarker(element, DEPLOY_ERROR_MARKER);
    errorMarked.push(element.id);

    return element;
  }

  function showResult(kind, ...children) {
    const el = result.el;
    el.textContent = '';
    el.classList.remove('am-ok', 'am-error', 'am-info', 'am-busy');
    el.classList.add('am-' + kind);
    el.setAttribute('data-state', kind);

    for (const child of children) {
      el.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    }
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch (err) {
      return null;
    }
  }

  function renderErrors(errors) {
    const list = h('ul', { id: 'deploy-errors', className: 'am-errors' });

    for (const error of errors) {
      const where = [];

      if (error.file) {
        where.push(error.file);
      }

      if (error.line !== undefined && error.line !== null && error.line !== '') {
        where.push('line ' + error.line);
      }

      const element = markErrorElement(error.element);

      const elementRef = error.element
        ? (element
          ? h('a', {
            href: '#',
            className: 'am-error-element',
            'data-element-id': error.element,
            text: error.element,
            onClick: event => {
              event.preventDefault();
              service('selection').select(element);
              service('canvas').scrollToElement(element);
            }
          })
          : h('code', { text: error.element }))
        : null;

      list.appendChild(h('li', { 'data-element-id': error.element || undefined },
        where.length ? where.join(', ') + ': ' : '',
        elementRef,
        elementRef ? ': ' : '',
        String(error.message || '')
      ));
    }

    return list;
  }

  async function deploy() {
    clearErrorMarkers();
    deployButton.el.disabled = true;
    showResult('busy', '部署中… Deploying…');

    try {
      const { xml } = await modeler.saveXML({ format: true });

      const form = new FormData();
      form.append('files', new Blob([ xml ], { type: 'application/xml' }), filename);

      const headers = { Accept: 'application/json' };

      if (csrfToken) {
        headers['X-CSRF-Token'] = csrfToken;
      }

      const response = await fetch(deployUrl, {
        method: 'POST',
        body: form,
        headers,
        credentials: 'same-origin'
      });

      const data = await readJson(response);

      if (response.status === 201 || response.status === 200) {
        const deployed = data && Array.isArray(data.deployed) ? data.deployed : [];

        if (!deployed.length) {
          showResult('info', '无变化，未部署新版本 Nothing changed — no new version deployed.');
        } else {
          showResult('ok', ...deployed.map(d => h('p', {
            className: 'am-deployed',
            'data-key': d.key,
            'data-version': d.version,
            text: '已部署 Deployed version ' + d.version + (d.key ? ' (' + d.key + ')' : '')
          })));
        }

        return { ok: true, status: response.status, data };
      }

      if (response.status === 400 && data && Array.isArray(data.errors)) {
        showResult('error',
          h('p', { text: '部署被拒绝 Deploy rejected — ' + data.errors.length + ' error(s):' }),
          renderErrors(data.errors));

        return { ok: false, status: response.status, data };
      }

      const detail = data && (data.message || data.error || data.detail);

      showResult('error', '部署失败 Deploy failed: HTTP ' + response.status +
        (detail ? ' — ' + (typeof detail === 'string' ? detail : JSON.stringify(detail)) : ''));

      return { ok: false, status: response.status, data };
    } catch (err) {
      showResult('error', '部署失败 Deploy failed: ' + (err && err.message || err));

      return { ok: false, status: 0, error: err };
    } finally {
      deployButton.el.disabled = false;
    }
  }

  async function download() {
    const { xml } = await modeler.saveXML({ format: true });
    const url = URL.createObjectURL(new Blob([ xml ], { type: 'application/xml' }));
    const link = h('a', { href: url, download: filename });

    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  deployButton.el.addEventListener('click', () => {
    if (modeler) {
      deploy();
    }
  });

  downloadButton.addEventListener('click', () => {
    if (modeler) {
      download();
    }
  });

  // open --------------------------------------------------------------------

  async function open() {
    deployButton.el.disabled = true;
    container.setAttribute('aria-busy', 'true');

    try {
      let xml = null;

      if (bpmnUrl) {
        const response = await fetch(bpmnUrl, {
          credentials: 'same-origin',
          headers: { Accept: 'application/xml, text/xml, */*' }
        });

        if (!response.ok) {
          throw new Error('HTTP ' + response.status + ' ' + response.statusText);
        }

        xml = await response.text();
      }

      modeler = new Modeler({
        container: canvasEl,
        moddleExtensions: {
          spiffworkflow: xml ? spiffworkflowDescriptorFor(xml) : spiffworkflowDescriptor
        }
      });

      modeler.get('commandStack').register(BATCH_COMMAND, {
        preExecute(context) {
          context.run();
        },
        execute() {
          return [];
        },
        revert() {
          return [];
        }
      });

      const eventBus = modeler.get('eventBus');

      eventBus.on('selection.changed', event => selectionToPanel(event.newSelection));
      eventBus.on('elements.changed', syncPanel);
      eventBus.on('import.done', () => selectionToPanel([]));

      const { warnings } = xml ? await modeler.importXML(xml) : await modeler.createDiagram();

      // references to undeclared ids (process variables) are kept as they
      // are, and so are attributes moddle does not know
      const serious = keepUnresolvedReferences(modeler.get('moddle'), warnings)
        .filter(w => !/^unknown attribute </.test(w.message));

      if (serious.length) {
        console.warn('AftercareModeler: import warnings', serious);
        showResult('info', '导入警告 Import warnings: ' + serious.map(w => w.message.split('\n')[0]).join('; '));
      }

      const canvas = modeler.get('canvas');

      canvas.zoom('fit-viewport', 'auto');
      window.addEventListener('resize', () => canvas.resized());

      container.setAttribute('data-loaded', 'true');
      deployButton.el.disabled = false;

      return modeler;
    } catch (err) {
      console.error('AftercareModeler: cannot open diagram', err);
      showResult('error', '无法打开流程图 Cannot open diagram: ' + (err && err.message || err));
      container.setAttribute('data-load-error', 'true');
      throw err;
    } finally {
      container.removeAttribute('aria-busy');
    }
  }

  return {
    open,
    deploy,
    get modeler() {
      return modeler;
    },
    async getXML() {
      const { xml } = await modeler.saveXML({ format: true });
      return xml;
    }
  };
}

// ------------------------------------------------------------------ bootstrap

function createApi() {
  let editor = null;
  let resolveReady;
  let rejectReady;

  const ready = new Promise((resolve, reject) => {
    resolveReady = resolve;
    rejectReady = reject;
  });

  ready.catch(() => {});

  return {
    ready,
    get modeler() {
      return editor ? editor.modeler : null;
    },
    deploy() {
      return editor ? editor.deploy() : Promise.reject(new Error('modeler not ready'));
    },
    getXML() {
      return editor ? editor.getXML() : Promise.reject(new Error('modeler not ready'));
    },
    _start(container) {
      editor = createEditor(container);
      editor.open().then(resolveReady, rejectReady);
    },
    _reject: err => rejectReady(err)
  };
}

const api = createApi();

window.AftercareModeler = api;

function boot() {
  const container = document.getElementById('modeler');

  if (!container) {
    api._reject(new Error('no #modeler element'));
    return;
  }

  api._start(container);
}

if (document.readyState === 'loading') {
  document.addEventListener('DOMContentLoaded', boot);
} else {
  boot();
}
