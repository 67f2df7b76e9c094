"""Reading finished runs: a sweep's jobs, its report table and figures, the search report, corpus
statistics (D2L 8.3's n-gram tables and Zipf plots)."""
