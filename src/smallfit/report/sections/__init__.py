"""The report's sections, one module each, in page order; each renders from the checked
:class:`smallfit.report.facts.Facts`."""
