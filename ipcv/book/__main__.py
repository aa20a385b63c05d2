"""``python -m ipcv.book``: see :mod:`ipcv.book.build`."""

from .build import main

if __name__ == "__main__":
    main()
