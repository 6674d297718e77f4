"""The build: the builder that walks the plan, one module per kind of step, the image and the outputs."""
