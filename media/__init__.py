"""Media: video decode/cut/encode and colour, images, masks, arrays, input listing, synthetic edits."""
