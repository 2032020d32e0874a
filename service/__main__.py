"""`python -m service serve|worker` (the same commands as `rsd serve|worker`)."""

from service.cli import main

raise SystemExit(main())
