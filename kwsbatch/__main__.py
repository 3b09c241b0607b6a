from kwsbatch.cli import entry

entry()
