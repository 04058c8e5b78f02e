"""One error type for problems a user can fix: entry points print it as one line and exit 1."""


class UserError(Exception):
    """Bad input (file, key, value) described in one line that names the culprit."""
