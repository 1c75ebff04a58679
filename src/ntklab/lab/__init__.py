"""The laboratory on top of the library: the command line (`cli`), datasets (`data`), run
folders and reports (`report`), fits, the studies (computations of the experiments) and the
registered experiments (`ntklab run NAME`).  The library never imports the lab."""
