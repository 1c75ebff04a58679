"""What every tier shares: input validation, the loss and time conventions, tiling of pair
blocks over threads, atomic files, optional extras.  Private: users reach `conventions` as
`ntklab.conventions`."""
