// Structure changes from the page, for admins: create, rename, edit,
// delete and move categories and channels. Each call returns the new
// layout, which the page applies at once; the server also pushes it to
// every other connection.

import { state, allChannels } from './state.js';
import { apiRequest } from './api.js';
import { applyLayout, handleRequestError } from './connection.js';
import { formDialog, confirmDialog } from './dialogs.js';

async function change(method, path, body) {
  const data = await apiRequest(method, path, body === undefined ? {} : { body });
  if (data?.layout) applyLayout(data.layout);
  return data;
}

// Moves a category or channel; `index` is its position in the target list
// after it left its old place.
export async function moveItem(kind, id, index, toCategory) {
  const body = { kind, id, index };
  if (toCategory !== undefined) body.to_category = toCategory;
  try {
    await change('POST', '/api/layout/move', body);
  } catch (error) {
    handleRequestError(error);
  }
}

export function createCategory() {
  return formDialog({
    title: 'New category',
    submitLabel: 'Create',
    fields: [{ name: 'name', label: 'Name', required: true }],
    submit: (values) => change('POST', '/api/categories', { name: values.name }),
  });
}

export function renameCategory(category) {
  return formDialog({
    title: 'Rename category',
    fields: [{ name: 'name', label: 'Name', value: category.name, required: true }],
    submit: (values) => change('PATCH', `/api/categories/${encodeURIComponent(category.id)}`, { name: values.name }),
  });
}

export async function deleteCategory(category) {
  if ((category.channels ?? []).length > 0) {
    await confirmDialog({
      title: 'Delete category',
      message: `The category “${category.name}” still holds channels. Move or delete them first.`,
      confirmLabel: 'OK',
    });
    return;
  }
  const confirmed = await confirmDialog({
    title: 'Delete category',
    message: `Delete the empty category “${category.name}”?`,
    confirmLabel: 'Delete',
    danger: true,
  });
  if (!confirmed) return;
  try {
    await change('DELETE', `/api/categories/${encodeURIComponent(category.id)}`);
  } catch (error) {
    handleRequestError(error);
  }
}

// Tier names the page knows of: those of the layout and the user's own.
// The server lists the valid ones in its error when another is entered.
function knownTiers() {
  const tiers = new Set(allChannels().map((channel) => channel.min_tier));
  if (state.user?.tier) tiers.add(state.user.tier);
  return [...tiers];
}

function channelFields(channel) {
  return [
    { name: 'name', label: 'Name', value: channel?.name ?? '', required: true },
    { name: 'topic', label: 'Topic', type: 'textarea', value: channel?.topic ?? '' },
    {
      name: 'min_tier',
      label: 'Lowest tier that may read it',
      value: channel?.min_tier ?? knownTiers()[0] ?? '',
      suggestions: knownTiers(),
      hint: 'Leave empty for the first tier.',
    },
    {
      name: 'post',
      label: 'Who may post',
      type: 'select',
      value: channel?.post ?? 'everyone',
      options: [{ value: 'everyone', label: 'Everyone who can read it' }, { value: 'admins', label: 'Admins only' }],
    },
    { name: 'hidden', label: 'Hidden from those who cannot read it', type: 'checkbox', value: channel?.hidden ?? false },
  ];
}

function channelBody(values) {
  const body = { name: values.name, topic: values.topic, post: values.post, hidden: values.hidden };
  if (values.min_tier.trim() !== '') body.min_tier = values.min_tier.trim();
  return body;
}

export function createChannel(category) {
  return formDialog({
    title: `New channel in ${category.name}`,
    submitLabel: 'Create',
    fields: channelFields(null),
    submit: (values) => change('POST', '/api/channels', { category: category.id, ...channelBody(values) }),
  });
}

export function editChannel(channel) {
  return formDialog({
    title: `Edit #${channel.name}`,
    fields: channelFields(channel),
    submit: (values) => change('PATCH', `/api/channels/${encodeURIComponent(channel.id)}`, channelBody(values)),
  });
}

export async function deleteChannel(channel) {
  const confirmed = await confirmDialog({
    title: 'Delete channel',
    message: `Delete #${channel.name} and all of its messages? This cannot be undone.`,
    confirmLabel: 'Delete',
    danger: true,
  });
  if (!confirmed) return;
  try {
    await change('DELETE', `/api/channels/${encodeURIComponent(channel.id)}`);
  } catch (error) {
    handleRequestError(error);
  }
}
