"""What every tier shares, private: input validation, tiling of pair blocks over threads, atomic
files, optional extras.  (The public conventions of loss, learning rate and time are `ntklab.conventions`.)"""
