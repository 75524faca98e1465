/*
 * Moddle descriptor for the SpiffWorkflow BPMN extension namespace
 * (http://spiffworkflow.org/bpmn/schema/1.0/core).
 *
 * moddle rejects (and silently drops) elements of a *registered* namespace
 * that have no type in the descriptor. Diagrams may carry SpiffWorkflow
 * extension elements this editor does not know about, so
 * `spiffworkflowDescriptorFor(xml)` adds a generic, loss-free type for every
 * unknown local name found in the document before it is imported.
 */

export const SPIFF_URI = 'http://spiffworkflow.org/bpmn/schema/1.0/core';

function bodyType(name) {
  return {
    name,
    superClass: [ 'Element' ],
    properties: [ { name: 'value', type: 'String', isBody: true } ]
  };
}

const KNOWN_TYPES = [
  {
    name: 'Properties',
    superClass: [ 'Element' ],
    properties: [ { name: 'properties', type: 'Property', isMany: true } ]
  },
  {
    name: 'Property',
    superClass: [ 'Element' ],
    properties: [
      { name: 'name', type: 'String', isAttr: true },
      { name: 'value', type: 'String', isAttr: true }
    ]
  },
  {
    name: 'ServiceTaskOperator',
    superClass: [ 'Element' ],
    properties: [
      { name: 'id', type: 'String', isAttr: true },
      { name: 'resultVariable', type: 'String', isAttr: true },
      { name: 'parameterList', type: 'Parameters' }
    ]
  },
  {
    name: 'Parameters',
    superClass: [ 'Element' ],
    properties: [ { name: 'parameters', type: 'Parameter', isMany: true } ]
  },
  {
    name: 'Parameter',
    superClass: [ 'Element' ],
    properties: [
      { name: 'id', type: 'String', isAttr: true },
      { name: 'type', type: 'String', isAttr: true },
      { name: 'value', type: 'String', isAttr: true }
    ]
  },
  {
    name: 'UnitTests',
    superClass: [ 'Element' ],
    properties: [ { name: 'unitTests', type: 'UnitTest', isMany: true } ]
  },
  {
    name: 'UnitTest',
    superClass: [ 'Element' ],
    properties: [
      { name: 'id', type: 'String', isAttr: true },
      { name: 'inputJson', type: 'InputJson' },
      { name: 'expectedOutputJson', type: 'ExpectedOutputJson' }
    ]
  },
  bodyType('CalledDecisionId'),
  bodyType('PreScript'),
  bodyType('PostScript'),
  bodyType('InstructionsForEndUser'),
  bodyType('MessagePayload'),
  bodyType('MessageVariable'),
  bodyType('InputJson'),
  bodyType('ExpectedOutputJson'),
  bodyType('AllowGuest'),
  bodyType('GuestConfirmation')
];

function capitalize(s) {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

function escapeRegExp(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Local names of all elements in the SpiffWorkflow namespace used in `xml`,
 * whatever prefix the document binds to it.
 */
export function spiffLocalNames(xml) {
  const names = new Set();

  if (!xml) {
    return names;
  }

  const prefixes = new Set();
  const nsDecl = /xmlns:([A-Za-z_][\w.-]*)\s*=\s*(["'])([^"']*)\2/g;
  let m;

  while ((m = nsDecl.exec(xml))) {
    if (m[3] === SPIFF_URI) {
      prefixes.add(m[1]);
    }
  }

  for (const prefix of prefixes) {
    const tag = new RegExp('<' + escapeRegExp(prefix) + ':([A-Za-z_][\\w.-]*)', 'g');

    while ((m = tag.exec(xml))) {
      names.add(m[1]);
    }
  }

  return names;
}

/**
 * Returns a fresh moddle descriptor for the SpiffWorkflow namespace that
 * knows every SpiffWorkflow element used in `xml`.
 */
export function spiffworkflowDescriptorFor(xml) {
  const types = KNOWN_TYPES.map(t => ({
    ...t,
    superClass: [ ...t.superClass ],
    properties: t.properties.map(p => ({ ...p }))
  }));

  const known = new Set(types.map(t => t.name));

  for (const localName of spiffLocalNames(xml)) {
    const typeName = capitalize(localName);

    if (!known.has(typeName)) {
      known.add(typeName);
      types.push({
        name: typeName,
        superClass: [ 'Element' ],
        properties: [
          { name: 'value', type: 'String', isBody: true },
          { name: 'children', type: 'Element', isMany: true }
        ]
      });
    }
  }

  return {
    name: 'SpiffWorkflow',
    uri: SPIFF_URI,
    prefix: 'spiffworkflow',
    xml: { tagAlias: 'lowerCase' },
    associations: [],
    types
  };
}

export const spiffworkflowDescriptor = spiffworkflowDescriptorFor('');
