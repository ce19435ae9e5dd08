// Typeset the equations that pymdownx.arithmatex (generic mode) marks, with the KaTeX
// bundled in docs/assets/katex/ (no network); Material's instant loading re-renders each page.
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "$", right: "$", display: false },
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true }
    ],
  })
})
