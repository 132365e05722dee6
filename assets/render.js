// Batches DOM updates: modules mark parts of the page as stale with
// invalidate(), and every stale part is redrawn once in the next animation
// frame, however many events arrived before it.

const renderers = new Map(); // part name -> render function
const stale = new Map(); // part name -> merged options of the pending render
let frameRequested = false;

// Registers the function that redraws one part. It receives the merged
// options of every invalidate() since the last frame.
export function onRender(part, render) {
  renderers.set(part, render);
}

// Marks a part stale. Boolean options are merged with OR.
export function invalidate(part, options = {}) {
  const merged = stale.get(part) ?? {};
  for (const [name, value] of Object.entries(options)) merged[name] = merged[name] || value;
  stale.set(part, merged);
  if (!frameRequested) {
    frameRequested = true;
    requestAnimationFrame(flush);
  }
}

export function invalidateAll() {
  for (const part of renderers.keys()) invalidate(part);
}

// Redraws the stale parts now. The frame callback calls it, and so can code
// that must measure the result at once.
export function flush() {
  frameRequested = false;
  const parts = [...stale.entries()];
  stale.clear();
  for (const [part, options] of parts) {
    const render = renderers.get(part);
    if (!render) continue;
    try {
      render(options);
    } catch (error) {
      console.error(`Rendering ${part} failed:`, error);
    }
  }
}
