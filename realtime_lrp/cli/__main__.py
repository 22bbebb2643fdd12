"""``python -m realtime_lrp.cli``, as torchrun starts it."""
from realtime_lrp.cli.main import main

main()
