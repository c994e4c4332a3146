"""The house's floor, beneath prep/, model/ and train/: safe outputs (`common.outputs`), the errors a user
can cause (`common.errors`) and what every command line shares (`common.cli`). It imports none of them."""
