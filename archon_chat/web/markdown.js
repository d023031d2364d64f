/**
 * Agent replies are markdown from a service we do not control: render them with marked,
 * then sanitize with DOMPurify so no script, event handler, form or style from a reply
 * ever reaches the page. Links open in a new tab without access to this page.
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
  FORBID_TAGS: ['style', 'form', 'input', 'button', 'textarea', 'select', 'iframe', 'svg'],
  FORBID_ATTR: ['style', 'srcset'],
  RETURN_DOM_FRAGMENT: true,
};

/** A sanitized DocumentFragment of `text` rendered as markdown. */
export function renderMarkdown(text) {
  return purifier.sanitize(marked.parse(text ?? ''), SANITIZE);
}
