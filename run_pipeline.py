"""The pipeline's command line from a checkout: `python run_pipeline.py COMMAND ...` does what
the installed `posetransfer` command does (cli/main.py)."""

if __name__ == "__main__":
    from cli.main import main

    main()
