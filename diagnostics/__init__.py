"""Diagnostics: the support center's fault checklist, SMS ping over SMPP, and tickets."""
