// The list of online members, shown once the server reports presence.
// Names come from /api/users for moderators and admins, and otherwise from
// the messages the page holds; members whose name the page does not know
// are counted without a name.

import { state } from './state.js';
import { dom, createElement } from './dom.js';
import { onRender } from './render.js';

onRender('presence', () => {
  if (!state.user || state.presence === null) {
    dom.presence.hidden = true;
    return;
  }
  const named = [];
  let unnamed = 0;
  for (const id of state.presence) {
    const name = state.userNames.get(id);
    if (name) named.push({ id, name });
    else unnamed += 1;
  }
  named.sort((a, b) => a.name.localeCompare(b.name, undefined, { sensitivity: 'base' }));

  const items = named.map(({ id, name }) => {
    const item = createElement('li', 'presence-item');
    item.append(createElement('span', 'presence-dot'), createElement('span', 'presence-name', name));
    if (id === String(state.user.id)) item.append(createElement('span', 'presence-you', '(you)'));
    return item;
  });
  if (unnamed > 0) {
    items.push(createElement('li', 'presence-item presence-others', unnamed === 1 ? '1 other member' : `${unnamed} other members`));
  }
  dom.presenceHeading.textContent = `Online — ${state.presence.size}`;
  dom.presenceList.replaceChildren(...items);
  dom.presence.hidden = false;
  dom.presence.classList.toggle('stale', state.connection !== 'live');
  dom.presence.title = state.connection === 'live' ? '' : 'As of the last live connection';
});
