"""Showing a fitted model: matplotlib figures (`plots`), the HTML report (`report`) with its what-fits calculator
(`calculator` + `calculator.js`), and the plan context that makes both agree with the last `vramfit suggest`
(`context`). May import plan, fit, store and the root; nothing below imports show."""
