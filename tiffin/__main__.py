"""`python -m tiffin` is the `tiffin` command."""

from tiffin.cli import main

if __name__ == "__main__":
    main()
