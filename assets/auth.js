// The login and registration screens. While the server has no admin, the
// registration form takes the one-time setup code that creates the admin.

import { dom } from './dom.js';
import { apiRequest } from './api.js';

let onLoggedIn = () => {};

export function showView(view) {
  dom.loadingView.hidden = view !== 'loading';
  dom.authView.hidden = view !== 'auth';
  dom.chatView.hidden = view !== 'chat';
}

export function showAuthView(errorMessage = '') {
  showView('auth');
  setAuthError(errorMessage);
  showAuthForm('login');
}

function showAuthForm(name) {
  dom.loginSection.hidden = name !== 'login';
  dom.registerSection.hidden = name !== 'register';
  const form = name === 'login' ? dom.loginForm : dom.registerForm;
  form.elements.username.focus();
}

function setAuthError(message) {
  dom.authError.textContent = message;
  dom.authError.hidden = message === '';
}

function setFormBusy(form, busy) {
  for (const control of form.elements) control.disabled = busy;
}

async function handleLoginSubmit(event) {
  event.preventDefault();
  const form = dom.loginForm;
  setAuthError('');
  setFormBusy(form, true);
  try {
    await logIn(form.elements.username.value.trim(), form.elements.password.value);
    form.reset();
  } catch (error) {
    setAuthError(error.message);
  } finally {
    setFormBusy(form, false);
  }
}

async function handleRegisterSubmit(event) {
  event.preventDefault();
  const form = dom.registerForm;
  const username = form.elements.username.value.trim();
  const password = form.elements.password.value;
  const setupCode = form.elements.setup_code.value.trim();
  const body = { username, password };
  if (setupCode !== '') body.setup_code = setupCode;

  setAuthError('');
  setFormBusy(form, true);
  try {
    await apiRequest('POST', '/api/register', { body });
  } catch (error) {
    setAuthError(error.message);
    setFormBusy(form, false);
    return;
  }

  // Registration does not start a session, so log in with the same credentials.
  try {
    await logIn(username, password);
    form.reset();
  } catch (error) {
    showAuthForm('login');
    dom.loginForm.elements.username.value = username;
    setAuthError(`The account was created, but logging in failed: ${error.message}`);
  } finally {
    setFormBusy(form, false);
  }
}

// The response also carries the token, but the page relies on the HttpOnly
// cookie that the same response sets and never stores the token.
async function logIn(username, password) {
  const data = await apiRequest('POST', '/api/session', { body: { username, password } });
  onLoggedIn(data.user);
}

// `loggedIn(user)` starts the chat once a login succeeded.
export function bindAuthEvents(loggedIn) {
  onLoggedIn = loggedIn;
  dom.loginForm.addEventListener('submit', handleLoginSubmit);
  dom.registerForm.addEventListener('submit', handleRegisterSubmit);
  dom.showRegister.addEventListener('click', () => showAuthForm('register'));
  dom.showLogin.addEventListener('click', () => showAuthForm('login'));
}
