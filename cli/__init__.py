"""The command line: the click group (main.py) and one small module per command, each a
thin shell over a stage's `run_<stage>` or the library; nothing else imports it."""
