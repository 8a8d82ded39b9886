"""``python -m flowdsl``: the same command line as the ``flowdsl`` console script."""

from ._cli import main

if __name__ == "__main__":
    main()
