// The start page's readiness check: /readyz every 10 s, component by component.
async function check() {
  const dot = document.getElementById('dot'), state = document.getElementById('state');
  const list = document.getElementById('components');
  try {
    const response = await fetch('/readyz', { cache: 'no-store' });
    const body = await response.json();
    dot.className = 'dot ' + (response.ok ? 'ok' : 'bad');
    state.textContent = response.ok ? 'Ready' : 'Not ready yet';
    list.replaceChildren(...Object.entries(body.components || {}).map(([name, c]) => {
      const item = document.createElement('li');
      item.textContent = name + ': ' + (c.ready ? 'ready' : (c.message || c.error || 'not ready'));
      return item;
    }));
  } catch (error) {
    dot.className = 'dot bad';
    state.textContent = 'Cannot reach the server';
  }
}
check();
setInterval(check, 10000);
