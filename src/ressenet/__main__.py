"""``python -m ressenet`` (also what ``torchrun -m ressenet train ...`` runs)."""
from ressenet.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
