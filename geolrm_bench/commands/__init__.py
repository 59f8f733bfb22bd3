"""Sub-commands of the ``geolrm-bench`` CLI, one module each (see ``geolrm_bench.cli``)."""
