// Choosing a new password with the token of a reset link (/reset-password?token=...).
const token = new URLSearchParams(location.search).get('token');
const form = document.getElementById('form');
const message = document.getElementById('message');
function show(text, kind) { message.textContent = text; message.className = 'message ' + kind; message.hidden = false; }
if (!token) { form.hidden = true; show('This link is incomplete. Ask for a new reset link.', 'error'); }
form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const password = document.getElementById('password').value;
  if (password !== document.getElementById('again').value) { show('The two passwords differ.', 'error'); return; }
  const button = document.getElementById('submit');
  button.disabled = true;
  try {
    const response = await fetch('/api/v1/auth/password-reset/confirm', {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token, new_password: password }),
    });
    if (response.ok) { form.hidden = true; show('Your password is changed. You can sign in with it now.', 'done'); return; }
    const body = await response.json().catch(() => ({}));
    const code = body.error && body.error.code;
    show(code === 'invalid_token' ? 'This link has expired or was already used. Ask for a new one.'
         : (body.error && body.error.message) || 'Something went wrong; try again.', 'error');
  } catch (error) {
    show('Cannot reach the server; check your connection and try again.', 'error');
  } finally { button.disabled = false; }
});
