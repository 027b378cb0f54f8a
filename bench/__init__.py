"""Load generators and benchmark reports. Run `python -m bench --help`."""
