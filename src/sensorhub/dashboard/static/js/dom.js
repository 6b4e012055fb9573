// The page's markup lives in index.html only: new cards and rows are clones of its <template>s.

export const $ = (id) => document.getElementById(id);

const protos = new Map();

export function cloneTemplate(id) {
  let proto = protos.get(id);
  if (!proto) {
    proto = $(id).content.firstElementChild;
    protos.set(id, proto);
  }
  return proto.cloneNode(true);
}
