from logship.cli.main import run

run()
