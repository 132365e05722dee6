// Modal dialogs on the page's one <dialog> element: forms, confirmations
// and lists of actions. The browser traps focus in a modal dialog and
// closes it on Escape.

import { dom, createElement, createButton } from './dom.js';

let closeCurrent = null; // resolves the open dialog's promise

function open(title, build) {
  closeCurrent?.(null);
  const dialog = dom.dialog;
  return new Promise((resolve) => {
    const finish = (value) => {
      if (closeCurrent !== finish) return;
      closeCurrent = null;
      dialog.removeEventListener('cancel', onCancel);
      if (dialog.open) dialog.close();
      dialog.replaceChildren();
      resolve(value);
    };
    // Escape fires cancel. The close event is not used, because it arrives
    // asynchronously and could reach the next dialog opened in the meantime.
    const onCancel = (event) => {
      event.preventDefault();
      finish(null);
    };
    closeCurrent = finish;
    const heading = createElement('h2', 'dialog-title', title);
    heading.id = 'dialog-title';
    dialog.setAttribute('aria-labelledby', 'dialog-title');
    dialog.replaceChildren(heading, build(finish));
    dialog.addEventListener('cancel', onCancel);
    dialog.showModal();
  });
}

// Asks a yes-or-no question; resolves true when confirmed.
export async function confirmDialog({ title, message, confirmLabel = 'OK', danger = false }) {
  const result = await open(title, (finish) => {
    const body = createElement('div', 'dialog-body');
    const buttons = createElement('div', 'dialog-buttons');
    const confirm = createButton(confirmLabel, danger ? 'danger' : 'primary', () => finish(true));
    confirm.dataset.action = 'confirm';
    buttons.append(createButton('Cancel', '', () => finish(false)), confirm);
    body.append(createElement('p', 'dialog-message', message), buttons);
    queueMicrotask(() => confirm.focus());
    return body;
  });
  return result === true;
}

// Shows a list of actions; runs the chosen one after the dialog closes.
export async function actionsDialog({ title, actions }) {
  const chosen = await open(title, (finish) => {
    const list = createElement('div', 'dialog-actions');
    for (const action of actions) {
      const button = createButton(action.label, action.danger ? 'danger' : '', () => finish(action));
      button.disabled = Boolean(action.disabled);
      list.append(button);
    }
    list.append(createButton('Cancel', '', () => finish(null)));
    return list;
  });
  await chosen?.run();
}

// Shows a form. `fields` are {name, label, type ('text', 'textarea',
// 'select' or 'checkbox'), value, options, maxLength, required, hint,
// suggestions}. `submit(values)` runs on submit; when it throws, the
// dialog stays open and shows the error's message. Resolves with the
// values once submit succeeded, or null when cancelled.
export function formDialog({ title, fields, submitLabel = 'Save', submit }) {
  return open(title, (finish) => {
    const form = createElement('form', 'dialog-form');
    form.noValidate = false;
    for (const field of fields) form.append(buildField(field));
    const error = createElement('p', 'error-text dialog-error');
    error.setAttribute('role', 'alert');
    error.hidden = true;
    const buttons = createElement('div', 'dialog-buttons');
    const save = createElement('button', 'primary', submitLabel);
    save.type = 'submit';
    buttons.append(createButton('Cancel', '', () => finish(null)), save);
    form.append(error, buttons);

    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const values = readValues(form, fields);
      save.disabled = true;
      error.hidden = true;
      try {
        await submit(values);
        finish(values);
      } catch (failure) {
        error.textContent = failure.message;
        error.hidden = false;
        save.disabled = false;
      }
    });
    queueMicrotask(() => form.querySelector('input, textarea, select')?.focus());
    return form;
  });
}

let fieldCounter = 0;

function buildField(field) {
  fieldCounter += 1;
  const id = `dialog-field-${fieldCounter}`;
  const wrapper = createElement('div', field.type === 'checkbox' ? 'dialog-field checkbox-field' : 'dialog-field');
  const label = createElement('label', '', field.label);
  label.htmlFor = id;
  let control;
  if (field.type === 'textarea') {
    control = createElement('textarea');
    control.rows = 3;
    control.value = field.value ?? '';
  } else if (field.type === 'select') {
    control = createElement('select');
    for (const option of field.options) {
      const element = createElement('option', '', option.label);
      element.value = option.value;
      element.selected = option.value === field.value;
      control.append(element);
    }
  } else if (field.type === 'checkbox') {
    control = createElement('input');
    control.type = 'checkbox';
    control.checked = Boolean(field.value);
  } else {
    control = createElement('input');
    control.type = 'text';
    control.value = field.value ?? '';
    control.autocomplete = 'off';
    if (field.suggestions?.length) {
      const list = createElement('datalist');
      list.id = `${id}-suggestions`;
      for (const suggestion of field.suggestions) {
        const option = createElement('option');
        option.value = suggestion;
        list.append(option);
      }
      control.setAttribute('list', list.id);
      wrapper.append(list);
    }
  }
  control.id = id;
  control.name = field.name;
  if (field.maxLength) control.maxLength = field.maxLength;
  if (field.required) control.required = true;
  if (field.type === 'checkbox') wrapper.append(control, label);
  else wrapper.append(label, control);
  if (field.hint) {
    const hint = createElement('p', 'hint', field.hint);
    hint.id = `${id}-hint`;
    control.setAttribute('aria-describedby', hint.id);
    wrapper.append(hint);
  }
  return wrapper;
}

function readValues(form, fields) {
  const values = {};
  for (const field of fields) {
    const control = form.elements.namedItem(field.name);
    values[field.name] = field.type === 'checkbox' ? control.checked : control.value;
  }
  return values;
}
