// Small building blocks shared by every screen: elements, fields, toasts, confirmations.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== 'string') node[key] = value;
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) if (child !== null && child !== undefined && child !== false) node.append(child);
  return node;
}

let ids = 0;
/** A labelled input with a hint and an error line that screen readers connect to it. */
export function field(label, input, hint) {
  const id = input.id || `f${++ids}`;
  input.id = id;
  const hintNode = hint ? el('div', { class: 'hint', id: `${id}-hint` }, hint) : null;
  const errorNode = el('div', { class: 'error-text', id: `${id}-error`, hidden: true });
  input.setAttribute('aria-describedby', [hintNode && hintNode.id, errorNode.id].filter(Boolean).join(' '));
  const wrapper = el('div', { class: 'field' }, el('label', { for: id }, label), input, hintNode, errorNode);
  wrapper.setError = (text) => {
    errorNode.textContent = text || '';
    errorNode.hidden = !text;
    input.setAttribute('aria-invalid', text ? 'true' : 'false');
  };
  return wrapper;
}

export function toast(text, kind = '') {
  const node = el('div', { class: `toast ${kind}` }, text);
  document.getElementById('toasts').append(node);
  setTimeout(() => node.remove(), 5000);
}

/** Asks before anything destructive; resolves true when confirmed. */
export function confirmAction(question, action = 'Delete') {
  return new Promise((resolve) => {
    const dialog = el('dialog', { 'aria-labelledby': 'confirm-title' },
      el('h2', { id: 'confirm-title' }, question),
      el('div', { class: 'row' },
        el('button', { class: 'btn danger', value: 'yes', onclick: () => dialog.close('yes') }, action),
        el('button', { class: 'btn', value: 'no', onclick: () => dialog.close('no') }, 'Cancel')));
    dialog.addEventListener('close', () => { dialog.remove(); resolve(dialog.returnValue === 'yes'); });
    document.body.append(dialog);
    dialog.showModal();
    dialog.querySelector('.btn:not(.danger)').focus();
  });
}

export function alertBox(text, kind = 'error') {
  return el('div', { class: `alert ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
}

/** A button that copies `text` and says so. */
export function copyButton(text, label = 'Copy') {
  const button = el('button', { class: 'btn small', type: 'button' }, label);
  button.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(text());
      button.textContent = 'Copied';
    } catch {
      button.textContent = 'Select and copy';
    }
    setTimeout(() => { button.textContent = label; }, 2000);
  });
  return button;
}

/** Disables a form's buttons while `work` runs. */
export async function busy(form, work) {
  const buttons = [...form.querySelectorAll('button')];
  buttons.forEach((b) => { b.disabled = true; });
  try { return await work(); } finally { buttons.forEach((b) => { b.disabled = false; }); }
}
