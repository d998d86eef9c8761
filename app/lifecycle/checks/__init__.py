"""The scrub checks, one module each; each fills a CheckReport and repairs unless the run is dry."""
