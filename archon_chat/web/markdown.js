/**
 * Agent replies are markdown from a service we do not control: render them with marked,
 * then sanitize with DOMPurify so no script, event handler, form or style from a reply
 * ever reaches the page. Links open in a new tab without access to this page.
 *
 * Nothing in a reply makes the reader's browser fetch anything: an image loads only from
 * a host the embedding page lists (`imageHosts`); any other image becomes a link showing
 * its alt text (or its alt text alone when its URL is not http/https), and media elements
 * are dropped. A link whose URL DOMPurify refused (`javascript:` and the like) is shown as
 * its plain text rather than as a link that does nothing.
 */
import { Marked } from 'marked';
import DOMPurify from 'dompurify';

const marked = new Marked({ gfm: true, breaks: true, async: false });

const purifier = DOMPurify(window);
purifier.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A' && node.hasAttribute('href')) {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer nofollow');
  }
});

const SANITIZE = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: [
    'style', 'form', 'input', 'button', 'textarea', 'select', 'iframe', 'svg',
    'audio', 'video', 'source', 'track', 'picture', 'object', 'embed', 'link', 'meta', 'base',
  ],
  FORBID_ATTR: ['style', 'srcset', 'background', 'poster', 'ping'],
  RETURN_DOM_FRAGMENT: true,
};

/**
 * The hosts images may load from, from a list such as
 * "https://cdn.example.com, images.example.org" (an origin, or a host name for any scheme).
 */
export function parseHosts(list) {
  return (list ?? '')
    .split(/[\s,]+/)
    .map((item) => item.trim().replace(/\/+$/, '').toLowerCase())
    .filter(Boolean);
}

function httpUrl(raw) {
  try {
    const url = new URL(raw, document.baseURI);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url : null;
  } catch {
    return null;
  }
}

function allowed(url, hosts) {
  return url !== null && (hosts.includes(url.origin.toLowerCase()) || hosts.includes(url.host.toLowerCase()));
}

function imageStandIn(img) {
  // Read before the element is ever attached: `src` is only an attribute here, and the
  // fragment lives in an inert document, so nothing has been fetched.
  const alt = (img.getAttribute('alt') || '').trim();
  const url = httpUrl(img.getAttribute('src') || '');
  const label = alt || (url ? url.hostname : '') || 'image';
  if (!url) return document.createTextNode(alt);
  const link = document.createElement('a');
  link.href = url.href;
  link.className = 'image-link';
  link.target = '_blank';
  link.rel = 'noopener noreferrer nofollow';
  link.title = url.href;
  link.textContent = `[image: ${label}]`;
  return link;
}

/**
 * A sanitized DocumentFragment of `text` rendered as markdown. `imageHosts` (see
 * parseHosts) lists where images may load from; by default none.
 */
export function renderMarkdown(text, { imageHosts = [] } = {}) {
  const fragment = purifier.sanitize(marked.parse(text ?? ''), SANITIZE);
  for (const img of fragment.querySelectorAll('img')) {
    if (!allowed(httpUrl(img.getAttribute('src') || ''), imageHosts)) {
      img.replaceWith(imageStandIn(img));
    } else {
      img.setAttribute('referrerpolicy', 'no-referrer');
      img.setAttribute('loading', 'lazy');
    }
  }
  for (const link of fragment.querySelectorAll('a:not([href])')) {
    link.replaceWith(...link.childNodes);
  }
  return fragment;
}
