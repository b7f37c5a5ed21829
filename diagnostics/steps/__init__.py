"""The checklist's steps, one module each, in the support procedure's order."""
