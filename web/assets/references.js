/*
 * moddle drops references it cannot resolve to an element of the document
 * (and reports them as import warnings). SpiffWorkflow diagrams use such
 * references on purpose, e.g. <bpmn:loopDataInputRef>customers</...> naming a
 * process variable rather than a declared data input. To write them back
 * unchanged, put an id-only placeholder in their place: the XML writer
 * serializes a reference by its id alone.
 *
 * Returns the warnings that remain (everything but the references kept).
 */
export function keepUnresolvedReferences(moddle, warnings) {
  const remaining = [];

  for (const warning of warnings || []) {
    const match = /^unresolved reference <(.*)>$/.exec(warning.message || '');
    const element = warning.element;
    const descriptor = match && element && element.$descriptor &&
      element.$descriptor.propertiesByName[warning.property];

    if (!descriptor || !descriptor.isReference) {
      remaining.push(warning);
      continue;
    }

    const placeholder = moddle.create(descriptor.type, { id: match[1] });

    if (descriptor.isMany) {
      element.get(descriptor.name).push(placeholder);
    } else {
      element.set(descriptor.name, placeholder);
    }
  }

  return remaining;
}
