"""The pure core: gate records and states, and every rule that turns an answer into an action.

No I/O library is imported here.
"""
