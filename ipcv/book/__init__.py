"""The book: its build and everything that presents results (built on :mod:`ipcv.analysis`' measurements).

- :mod:`~ipcv.book.build`: ``python -m ipcv.book`` executes the notebooks and builds the Jupyter Book;
- :mod:`~ipcv.book.claims`: the paper's claims as tests on per-image measurements (one function per claim),
  shared by :mod:`~ipcv.book.findings` (each notebook's closing paragraph) and :mod:`~ipcv.book.status`
  (the status page);
- :mod:`~ipcv.book.report` (what ran where, printing checked numbers), :mod:`~ipcv.book.plots` (figures),
  :mod:`~ipcv.book.names` (column names in words);
- readers of stored results: :mod:`~ipcv.book.paper` (the paper's tables beside the benchmark files),
  :mod:`~ipcv.book.accuracy` (the evaluation store, notebook 08), :mod:`~ipcv.book.efficiency` (notebook 07).

Nothing below :mod:`ipcv.book` imports it. Files are found through :mod:`ipcv.paths` (the checkout's ``data/``).
"""
