"""Provisioner tests and the fake drivers other tests register (`provisioners.fakes`)."""
