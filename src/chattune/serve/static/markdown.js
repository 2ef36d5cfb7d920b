// Markdown for model replies, safe by construction: the reply is parsed here and the page is built with
// createElement from a fixed set of tags (p, pre/code, h3-h6, ul/ol/li, strong, em, code, a); every piece of the
// reply enters the page as a text node. Nothing is ever parsed as HTML, so "<img onerror=...>" stays text.
// Links keep only http(s) addresses (never javascript: or data:) and open in a new tab without the opener.
"use strict";

const markdown = (() => {
  const FENCE = /^```/;
  const HEADING = /^(#{1,6})\s+(.*)$/;
  const BULLET = /^\s*[-*+]\s+(.*)$/;
  const NUMBERED = /^\s*\d+[.)]\s+(.*)$/;
  // inline spans, tried left to right: `code`, **bold**, *em* or _em_, [text](http...)
  const INLINE = /(`[^`\n]+`)|(\*\*[^*\n]+\*\*)|(\*[^*\s][^*\n]*\*|_[^_\s][^_\n]*_)|(\[[^\]\n]+\]\(https?:\/\/[^\s)]+\))/;

  function element(tag, children) {
    const node = document.createElement(tag);
    node.append(...children);
    return node;
  }

  function inline(text) {
    const nodes = [];
    let match;
    while ((match = INLINE.exec(text)) !== null) {
      if (match.index > 0) nodes.push(document.createTextNode(text.slice(0, match.index)));
      const [whole, code, bold, em, link] = match;
      if (code) nodes.push(element("code", [document.createTextNode(code.slice(1, -1))]));
      else if (bold) nodes.push(element("strong", inline(bold.slice(2, -2))));
      else if (em) nodes.push(element("em", inline(em.slice(1, -1))));
      else if (link) nodes.push(anchor(link));
      text = text.slice(match.index + whole.length);
    }
    if (text) nodes.push(document.createTextNode(text));
    return nodes;
  }

  function anchor(source) {
    const split = source.indexOf("](");
    let url;
    try {
      url = new URL(source.slice(split + 2, -1));  // the pattern admits only http(s) addresses
    } catch {
      return document.createTextNode(source);  // not a valid address: shown as it was written
    }
    const node = element("a", inline(source.slice(1, split)));
    node.href = url.href;
    node.rel = "noopener noreferrer nofollow";
    node.target = "_blank";
    return node;
  }

  function list(lines, start, pattern, tag) {
    const items = [];
    let end = start;
    while (end < lines.length && pattern.test(lines[end])) {
      items.push(element("li", inline(lines[end].match(pattern)[1])));
      end += 1;
    }
    return [element(tag, items), end];
  }

  function codeBlock(lines, start) {
    let end = start + 1;
    while (end < lines.length && !FENCE.test(lines[end])) end += 1;
    const code = element("code", [document.createTextNode(lines.slice(start + 1, end).join("\n"))]);
    return [element("pre", [code]), end + 1];  // an unclosed fence (still streaming) runs to the end
  }

  function paragraph(lines, start) {
    let end = start;
    while (end < lines.length && lines[end].trim() && !FENCE.test(lines[end]) && !HEADING.test(lines[end])
           && !BULLET.test(lines[end]) && !NUMBERED.test(lines[end])) end += 1;
    return [element("p", inline(lines.slice(start, end).join("\n"))), end];
  }

  // The nodes for `text`: blocks of fenced code, headings, lists and paragraphs.
  function render(text) {
    const lines = text.split("\n");
    const blocks = [];
    let at = 0;
    while (at < lines.length) {
      const line = lines[at];
      let block;
      if (!line.trim()) { at += 1; continue; }
      if (FENCE.test(line)) [block, at] = codeBlock(lines, at);
      else if (HEADING.test(line)) {
        const [, hashes, title] = line.match(HEADING);
        block = element("h" + Math.min(hashes.length + 2, 6), inline(title));
        at += 1;
      } else if (BULLET.test(line)) [block, at] = list(lines, at, BULLET, "ul");
      else if (NUMBERED.test(line)) [block, at] = list(lines, at, NUMBERED, "ol");
      else [block, at] = paragraph(lines, at);
      blocks.push(block);
    }
    return blocks;
  }

  return { render };
})();
