// Typeset the math that pymdownx.arithmatex (generic mode) leaves as \( ... \) and \[ ... \],
// with the KaTeX files served from this site (javascripts/katex/), on every page load and
// every instant navigation of mkdocs-material.
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    throwOnError: false,
  });
});
