from logship.cli.entry import run

run()
