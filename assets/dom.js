// DOM helpers and the page's fixed elements. User text reaches the DOM only
// through textContent and text nodes, never as HTML.

export function byId(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`index.html has no element #${id}`);
  return element;
}

export function createElement(tagName, className, text) {
  const element = document.createElement(tagName);
  if (className) element.className = className;
  if (text !== undefined && text !== null) element.textContent = text;
  return element;
}

export function createButton(label, className, onClick) {
  const button = createElement('button', className, label);
  button.type = 'button';
  if (onClick) button.addEventListener('click', onClick);
  return button;
}

// Module scripts run after the document is parsed, so every element exists.
export const dom = {
  loadingView: byId('loading-view'),
  authView: byId('auth-view'),
  loginSection: byId('login-section'),
  loginForm: byId('login-form'),
  registerSection: byId('register-section'),
  registerForm: byId('register-form'),
  showRegister: byId('show-register'),
  showLogin: byId('show-login'),
  authError: byId('auth-error'),
  chatView: byId('chat-view'),
  sidebarToggle: byId('sidebar-toggle'),
  sidebarBackdrop: byId('sidebar-backdrop'),
  connectionStatus: byId('connection-status'),
  currentUser: byId('current-user'),
  logoutButton: byId('logout-button'),
  sidebar: byId('sidebar'),
  channelTree: byId('channel-tree'),
  adminTools: byId('admin-tools'),
  newCategoryButton: byId('new-category-button'),
  presence: byId('presence'),
  presenceHeading: byId('presence-heading'),
  presenceList: byId('presence-list'),
  channelName: byId('channel-name'),
  channelTopic: byId('channel-topic'),
  notice: byId('notice'),
  noticeText: byId('notice-text'),
  noticeDismiss: byId('notice-dismiss'),
  messageScroller: byId('message-scroller'),
  loadOlder: byId('load-older'),
  emptyChannel: byId('empty-channel'),
  messageList: byId('message-list'),
  jumpToNew: byId('jump-to-new'),
  typingIndicator: byId('typing-indicator'),
  composer: byId('composer'),
  composerInput: byId('composer-input'),
  composerCounter: byId('composer-counter'),
  sendButton: byId('send-button'),
  composerReason: byId('composer-reason'),
  dialog: byId('dialog'),
};

export function showNotice(message) {
  dom.noticeText.textContent = message;
  dom.notice.hidden = false;
}

export function hideNotice() {
  dom.notice.hidden = true;
  dom.noticeText.textContent = '';
}
